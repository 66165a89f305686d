//! The server's configuration: layered settings and the validated [`Config`].
//!
//! Settings come from four layers, highest first: command-line flags, `ANNAL_*` environment
//! variables (the binary reads both through its argument parser), a TOML file, and the
//! defaults below. [`Settings::resolve`] checks everything at once and returns every problem
//! it found, so that a server with a bad configuration refuses to start with the whole list.
//!
//! | setting (TOML key) | default | meaning |
//! |---|---|---|
//! | `data` | `./annal-data` | the store folder |
//! | `listen` | `127.0.0.1:2113` | address for gRPC and HTTP (one port) |
//! | `log_format` | `text` | `text` or `json` log lines on standard error |
//! | `tls_cert`, `tls_key` | none | PEM files; both or neither; TLS for both protocols |
//! | `read_tokens` | none | bearer tokens that may read |
//! | `write_tokens` | none | bearer tokens that may read and append |
//! | `max_connections` | 1024 | open connections; more wait in the accept queue |
//! | `max_streams_per_connection` | 256 | concurrent HTTP/2 requests on one connection, and appends in flight on one framed connection |
//! | `max_subscriptions` | 1024 | live subscriptions (gRPC and SSE); more are refused |
//! | `max_reads` | 256 | streamed reads at once (gRPC and HTTP); more are refused |
//! | `max_inflight_append_bytes` | 268435456 | bytes of append requests received and being processed at once; more wait (at least twice `max_append_bytes` and 1 MiB, room for one base64 JSON append) |
//! | `max_event_bytes` | 16777216 | the largest event |
//! | `max_append_bytes` | 67108864 | the largest append request |
//! | `read_batch_events` | 2048 | events per streamed batch |
//! | `subscription_buffer` | 8 | batches queued per subscriber before it is paused |
//! | `heartbeat` | `5s` | heartbeat interval of idle subscriptions |
//! | `shutdown_grace` | `30s` | how long a shutdown waits for requests in flight |
//!
//! With no token configured, authentication is off.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// One layer of settings; `None` means "not set here".
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub data: Option<PathBuf>,
    pub listen: Option<String>,
    pub log_format: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub read_tokens: Option<Vec<String>>,
    pub write_tokens: Option<Vec<String>>,
    pub max_connections: Option<u64>,
    pub max_streams_per_connection: Option<u64>,
    pub max_subscriptions: Option<u64>,
    pub max_reads: Option<u64>,
    pub max_inflight_append_bytes: Option<u64>,
    pub max_event_bytes: Option<u64>,
    pub max_append_bytes: Option<u64>,
    pub read_batch_events: Option<u64>,
    pub subscription_buffer: Option<u64>,
    pub heartbeat: Option<String>,
    pub shutdown_grace: Option<String>,
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

/// Limits that keep memory bounded under load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_streams_per_connection: u32,
    pub max_subscriptions: usize,
    pub max_reads: usize,
    pub max_inflight_append_bytes: usize,
    pub max_event_bytes: usize,
    pub max_append_bytes: usize,
    pub read_batch_events: usize,
    pub subscription_buffer: usize,
    pub heartbeat: Duration,
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_streams_per_connection: 256,
            max_subscriptions: 1024,
            max_reads: 256,
            max_inflight_append_bytes: 256 << 20,
            max_event_bytes: annal_core::validate::DEFAULT_MAX_EVENT_SIZE,
            max_append_bytes: 64 << 20,
            read_batch_events: 2048,
            subscription_buffer: 8,
            heartbeat: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
        }
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

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:2113";
/// The default store folder.
pub const DEFAULT_DATA: &str = "./annal-data";

impl Settings {
    /// Reads a TOML settings file.
    pub fn from_file(path: &Path) -> Result<Settings, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            format!(
                "the config file {} is not valid: {}",
                path.display(),
                e.to_string().trim_end()
            )
        })
    }

    /// These settings, with `lower`'s filling whatever these leave unset.
    pub fn over(self, lower: Settings) -> Settings {
        Settings {
            data: self.data.or(lower.data),
            listen: self.listen.or(lower.listen),
            log_format: self.log_format.or(lower.log_format),
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            read_tokens: self.read_tokens.or(lower.read_tokens),
            write_tokens: self.write_tokens.or(lower.write_tokens),
            max_connections: self.max_connections.or(lower.max_connections),
            max_streams_per_connection: self
                .max_streams_per_connection
                .or(lower.max_streams_per_connection),
            max_subscriptions: self.max_subscriptions.or(lower.max_subscriptions),
            max_reads: self.max_reads.or(lower.max_reads),
            max_inflight_append_bytes: self
                .max_inflight_append_bytes
                .or(lower.max_inflight_append_bytes),
            max_event_bytes: self.max_event_bytes.or(lower.max_event_bytes),
            max_append_bytes: self.max_append_bytes.or(lower.max_append_bytes),
            read_batch_events: self.read_batch_events.or(lower.read_batch_events),
            subscription_buffer: self.subscription_buffer.or(lower.subscription_buffer),
            heartbeat: self.heartbeat.or(lower.heartbeat),
            shutdown_grace: self.shutdown_grace.or(lower.shutdown_grace),
        }
    }

    /// Checks every setting and fills defaults; on failure, every problem found.
    pub fn resolve(self) -> Result<Config, Vec<String>> {
        let mut problems = Vec::new();
        let d = Limits::default();

        let listen_text = self.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen = match listen_text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                problems.push(format!(
                    "listen: '{listen_text}' is not an address of the form HOST:PORT with an IP host (e.g. 127.0.0.1:2113)"
                ));
                None
            }
        };
        let data = self.data.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA));
        if data.as_os_str().is_empty() {
            problems.push("data: the store folder must not be empty".into());
        } else if data.exists() && !data.is_dir() {
            problems.push(format!(
                "data: {} exists and is not a folder",
                data.display()
            ));
        }
        let log_format = match self.log_format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
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
        let mut tokens = |name: &str, list: Option<Vec<String>>| -> Vec<String> {
            let list = list.unwrap_or_default();
            for t in &list {
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
            list
        };
        let read_tokens = tokens("read_tokens", self.read_tokens);
        let write_tokens = tokens("write_tokens", self.write_tokens);

        let mut count = |name: &str, v: Option<u64>, default: usize, max: u64| -> usize {
            match v {
                None => default,
                Some(0) => {
                    problems.push(format!("{name}: must be at least 1"));
                    default
                }
                Some(n) if n > max => {
                    problems.push(format!("{name}: {n} is over the maximum of {max}"));
                    default
                }
                Some(n) => n as usize,
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
            d.max_streams_per_connection as usize,
            1 << 16,
        ) as u32;
        let max_subscriptions = count(
            "max_subscriptions",
            self.max_subscriptions,
            d.max_subscriptions,
            1 << 20,
        );
        let max_reads = count("max_reads", self.max_reads, d.max_reads, 1 << 16);
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
        let max_inflight_append_bytes = count(
            "max_inflight_append_bytes",
            self.max_inflight_append_bytes,
            d.max_inflight_append_bytes,
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
        let mut duration = |name: &str, v: Option<String>, default: Duration| -> Duration {
            match v {
                None => default,
                Some(text) => match humantime::parse_duration(&text) {
                    Ok(d) if d.is_zero() => {
                        problems.push(format!("{name}: must be longer than zero"));
                        default
                    }
                    Ok(d) if d > Duration::from_secs(3600) => {
                        problems.push(format!("{name}: '{text}' is longer than the maximum of 1h"));
                        default
                    }
                    Ok(d) => d,
                    Err(e) => {
                        problems.push(format!(
                            "{name}: '{text}' is not a duration like '5s' or '250ms' ({e})"
                        ));
                        default
                    }
                },
            }
        };
        let heartbeat = duration("heartbeat", self.heartbeat, d.heartbeat);
        let shutdown_grace = duration("shutdown_grace", self.shutdown_grace, d.shutdown_grace);

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
            limits: Limits {
                max_connections,
                max_streams_per_connection,
                max_subscriptions,
                max_reads,
                max_inflight_append_bytes,
                max_event_bytes,
                max_append_bytes,
                read_batch_events,
                subscription_buffer,
                heartbeat,
                shutdown_grace,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_set_gives_the_defaults() {
        let c = Settings::default().resolve().unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(c.data, PathBuf::from(DEFAULT_DATA));
        assert_eq!(c.limits, Limits::default());
        assert!(!c.auth_enabled());
    }

    #[test]
    fn higher_layers_win() {
        let file: Settings =
            toml::from_str("listen = \"127.0.0.1:1\"\ndata = \"/from/file\"\nheartbeat = \"1s\"")
                .unwrap();
        let flags = Settings {
            listen: Some("127.0.0.1:2".into()),
            ..Settings::default()
        };
        let c = flags.over(file).resolve().unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.data, PathBuf::from("/from/file"));
        assert_eq!(c.limits.heartbeat, Duration::from_secs(1));
    }

    #[test]
    fn every_problem_is_reported_together() {
        let s = Settings {
            listen: Some("nowhere".into()),
            log_format: Some("xml".into()),
            tls_cert: Some("/no/such/cert.pem".into()),
            write_tokens: Some(vec!["short".into()]),
            max_subscriptions: Some(0),
            heartbeat: Some("soon".into()),
            ..Settings::default()
        };
        let problems = s.resolve().unwrap_err();
        let all = problems.join("\n");
        for needle in [
            "listen: 'nowhere'",
            "log_format: 'xml'",
            "tls_key: missing",
            "write_tokens: a token of 5 characters",
            "max_subscriptions: must be at least 1",
            "heartbeat: 'soon'",
        ] {
            assert!(all.contains(needle), "missing '{needle}' in:\n{all}");
        }
        assert_eq!(problems.len(), 6, "{all}");
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("annal.toml");
        std::fs::write(&path, "listn = \"127.0.0.1:1\"\n").unwrap();
        let e = Settings::from_file(&path).unwrap_err();
        assert!(e.contains("listn"), "{e}");
    }
}
