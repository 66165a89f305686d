//! The commands that talk to a server: `append`, `read`, `read-all`, `tail`, `streams`, `info`,
//! `snapshot` (and the group commands, in `groups.rs`).
//!
//! Exit codes: 0 done; 1 any other failure; 2 bad usage or a request the server rejected as
//! invalid; 3 a concurrency conflict (wrong expected revision, failed condition, event id
//! reused); 4 not found; 5 the server is unreachable, refused the token, or is unavailable.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use annal_client::Client;
use annal_core::{
    next_item, AppendRequest, AsOf, Error, EventStore, ExpectedRevision, ListStreams, Metadata,
    NewEvent, Query, QueryItem, ReadRequest, Source, SubscribeRequest, SubscriptionItem, Timestamp,
    Uuid,
};
use clap::Args;

use crate::render;

/// How to reach the server.
#[derive(Args, Debug, Clone)]
pub struct Remote {
    /// The server's URL.
    #[arg(
        long,
        global = true,
        env = "ANNAL_SERVER",
        default_value = "http://127.0.0.1:2113"
    )]
    pub server: String,
    /// A bearer token.
    #[arg(long, global = true, env = "ANNAL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A PEM certificate to trust for https:// (a CA or the server's own).
    #[arg(long, global = true, env = "ANNAL_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// JSON output, one object per line.
    #[arg(long, global = true)]
    pub json: bool,
}

/// A failure and the exit code it earns.
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure { code: 1, error }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::InvalidArgument { .. } | Error::TooLarge { .. } => 2,
            Error::WrongExpectedRevision { .. }
            | Error::ConditionFailed { .. }
            | Error::EventIdConflict { .. } => 3,
            Error::NotFound(_) => 4,
            Error::Unavailable(_)
            | Error::Closed
            | Error::Unauthenticated(_)
            | Error::PermissionDenied(_) => 5,
            _ => 1,
        };
        Failure {
            code,
            error: e.into(),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure {
            code: 1,
            error: e.into(),
        }
    }
}

type Outcome = Result<ExitCode, Failure>;

impl Remote {
    pub(crate) async fn connect(&self) -> Result<Client, Failure> {
        let mut b = Client::builder(self.server.clone());
        if let Some(t) = &self.token {
            b = b.token(t.clone());
        }
        if let Some(ca) = &self.ca {
            let pem = std::fs::read(ca).map_err(|e| Failure {
                code: 2,
                error: anyhow::anyhow!("cannot read the certificate {}: {e}", ca.display()),
            })?;
            b = b.ca_certificate(pem);
        }
        Ok(b.connect().await?)
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: 2,
        error: anyhow::anyhow!(message.into()),
    }
}

fn parse_expected(text: &str) -> Result<ExpectedRevision, Failure> {
    Ok(match text {
        "any" => ExpectedRevision::Any,
        "no-stream" | "no_stream" => ExpectedRevision::NoStream,
        "exists" | "stream-exists" | "stream_exists" => ExpectedRevision::StreamExists,
        n => ExpectedRevision::Exact(n.parse().map_err(|_| {
            usage(format!(
                "--expected-revision '{n}' is none of: a revision number, any, no-stream, exists"
            ))
        })?),
    })
}

fn parse_as_of(text: &str) -> Result<AsOf, Failure> {
    annal_server::json::as_of(text).map_err(|_| {
        usage(format!(
            "--as-of '{text}' is neither a position nor an RFC 3339 time like 2026-11-23T19:10:27Z"
        ))
    })
}

fn parse_uuid(flag: &str, text: &str) -> Result<Uuid, Failure> {
    text.parse()
        .map_err(|_| usage(format!("{flag} '{text}' is not a UUID")))
}

#[derive(Args, Debug)]
pub struct AppendArgs {
    /// The stream to append to.
    #[arg(required_unless_present = "no_stream")]
    pub stream: Option<String>,
    /// Append an event that belongs to no stream, found by its tags and type.
    #[arg(long, conflicts_with_all = ["stream", "expected_revision"])]
    pub no_stream: bool,
    /// The event type.
    #[arg(long = "type", short = 't')]
    pub event_type: String,
    /// The event data (JSON unless --content-type says otherwise).
    #[arg(long, short = 'd', default_value = "{}")]
    pub data: String,
    /// A revision number, `any`, `no-stream` or `exists` [default: any].
    #[arg(long, short = 'e', value_name = "REVISION")]
    pub expected_revision: Option<String>,
    /// A tag (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// The event id, for an idempotent retry [default: a new random id].
    #[arg(long)]
    pub id: Option<String>,
    #[arg(long, default_value = annal_core::DEFAULT_CONTENT_TYPE)]
    pub content_type: String,
    /// Who did it.
    #[arg(long)]
    pub actor: Option<String>,
    #[arg(long)]
    pub correlation_id: Option<String>,
    #[arg(long)]
    pub causation_id: Option<String>,
    /// The schema version.
    #[arg(long, default_value_t = 1)]
    pub schema_version: u32,
}

pub async fn append(remote: &Remote, a: AppendArgs) -> Outcome {
    if annal_server::json::is_json(&a.content_type) {
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&a.data) {
            return Err(usage(format!("--data is not valid JSON: {e}")));
        }
    }
    let mut e = NewEvent::new(a.event_type, a.data.into_bytes())
        .with_content_type(a.content_type)
        .with_schema_version(a.schema_version)
        .with_metadata(Metadata {
            correlation_id: a
                .correlation_id
                .map(|c| parse_uuid("--correlation-id", &c))
                .transpose()?,
            causation_id: a
                .causation_id
                .map(|c| parse_uuid("--causation-id", &c))
                .transpose()?,
            actor: a.actor.map(Into::into),
            extra: Default::default(),
        });
    if let Some(id) = a.id {
        e = e.with_id(parse_uuid("--id", &id)?);
    }
    e.tags = a.tags.into_iter().map(Into::into).collect();
    let expected = match a.expected_revision {
        Some(t) => parse_expected(&t)?,
        None => ExpectedRevision::Any,
    };
    let stream = a.stream.unwrap_or_default();
    let client = remote.connect().await?;
    let r = client
        .append(AppendRequest::stream(stream.as_str(), expected, vec![e]))
        .await?;
    let mut out = std::io::stdout().lock();
    if remote.json {
        let body = annal_server::json::AppendResultJson::from(r);
        writeln!(out, "{}", serde_json::to_string(&body).unwrap_or_default())?;
    } else if stream.is_empty() {
        writeln!(
            out,
            "appended with no stream at position {}",
            r.last_position
        )?;
    } else {
        writeln!(
            out,
            "appended to {stream} at revision {}, position {}",
            r.revision(),
            r.last_position
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct ReadArgs {
    /// The stream to read.
    #[arg(required_unless_present_any = ["correlation", "actor"])]
    pub stream: Option<String>,
    /// Instead of a stream, every event of one business transaction, across streams.
    #[arg(long, value_name = "ID", conflicts_with_all = ["stream", "actor"])]
    pub correlation: Option<String>,
    /// Instead of a stream, every event of one actor.
    #[arg(long, value_name = "NAME", conflicts_with = "stream")]
    pub actor: Option<String>,
    /// With --correlation or --actor: only events recorded at or after this RFC 3339 time.
    #[arg(long, value_name = "TIME", conflicts_with_all = ["stream", "from", "backward"])]
    pub since: Option<String>,
    /// With --correlation or --actor: only events recorded at or before this RFC 3339 time.
    #[arg(long, value_name = "TIME", conflicts_with_all = ["stream", "as_of"])]
    pub until: Option<String>,
    #[command(flatten)]
    pub page: PageArgs,
}

/// Where a read starts, which way it goes, how much and as of when.
#[derive(Args, Debug)]
pub struct PageArgs {
    /// Newest first.
    #[arg(long)]
    pub backward: bool,
    /// Start here (a revision for a stream, a position otherwise).
    #[arg(long)]
    pub from: Option<u64>,
    /// At most this many events.
    #[arg(long, short = 'n')]
    pub limit: Option<u64>,
    /// Only events at or before this position or RFC 3339 time.
    #[arg(long, value_name = "TIME|POSITION")]
    pub as_of: Option<String>,
}

impl PageArgs {
    fn apply(self, mut r: ReadRequest) -> Result<ReadRequest, Failure> {
        if self.backward {
            r = r.backward();
        }
        r.from = self.from;
        r.limit = self.limit;
        if let Some(t) = self.as_of {
            r = r.as_of(parse_as_of(&t)?);
        }
        Ok(r)
    }
}

/// Filters of `read-all` and `tail`.
#[derive(Args, Debug, Default)]
pub struct FilterArgs {
    /// Only this stream (tail only; use `read` for a stream).
    #[arg(long)]
    pub stream: Option<String>,
    /// Only streams of this category (combines with --prefix, --type and --tag).
    #[arg(long)]
    pub category: Option<String>,
    /// Only streams whose id starts with this.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Only events of this type (repeatable: any of them).
    #[arg(long = "type", short = 't')]
    pub types: Vec<String>,
    /// Only events with this tag (repeatable: all of them).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
}

impl FilterArgs {
    fn source(self) -> Result<Source, Failure> {
        let by_type = !self.types.is_empty() || !self.tags.is_empty();
        let combining = self.category.is_some() || self.prefix.is_some() || by_type;
        if let Some(s) = self.stream {
            if combining {
                return Err(usage(
                    "give --stream alone, or any of --category, --prefix and --type/--tag",
                ));
            }
            return Ok(Source::Stream(s));
        }
        Ok(annal_core::Selection {
            category: self.category,
            stream_prefix: self.prefix,
            query: by_type.then(|| {
                Query::item(QueryItem {
                    types: self.types,
                    tags: self.tags,
                })
            }),
        }
        .into_source())
    }
}

async fn print_read(remote: &Remote, request: ReadRequest) -> Outcome {
    let client = remote.connect().await?;
    let source = request.source.clone();
    let mut events = client.read(request).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut count = 0u64;
    while let Some(e) = next_item(&mut events).await {
        let e = e?;
        let line = if remote.json {
            render::event_json(&e)
        } else {
            render::event_line(&e)
        };
        if let Err(err) = writeln!(out, "{line}") {
            if err.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(err.into());
        }
        count += 1;
    }
    if let Err(err) = out.flush() {
        if err.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(err.into());
        }
    }
    if count == 0 {
        if let Source::Stream(stream) = &source {
            // Nothing read of a stream: say whether it is there at all.
            if client.stream_info(stream).await?.is_none() {
                return Err(Failure::from(Error::NotFound(format!(
                    "stream '{stream}' has no event"
                ))));
            }
        }
        if !remote.json {
            eprintln!("no events");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn read(remote: &Remote, a: ReadArgs) -> Outcome {
    let source = match (a.stream, a.correlation, a.actor) {
        (Some(s), None, None) => Source::Stream(s),
        (None, Some(c), None) => Source::Correlation(parse_uuid("--correlation", &c)?),
        (None, None, Some(a)) => Source::Actor(a),
        _ => return Err(usage("give one of a stream, --correlation or --actor")),
    };
    let time = |flag: &str, text: &str| -> Result<Timestamp, Failure> {
        text.parse().map_err(|e| usage(format!("{flag}: {e}")))
    };
    let since = a.since.as_deref().map(|t| time("--since", t)).transpose()?;
    let until = a.until.as_deref().map(|t| time("--until", t)).transpose()?;
    let mut request = a.page.apply(ReadRequest::source(source))?;
    if let Some(until) = until {
        request = request.as_of(AsOf::Time(until));
    }
    if let Some(since) = since {
        // The first position recorded at or after `since`: the one after the head of the
        // log just before it.
        let client = remote.connect().await?;
        let before = Timestamp(since.0.saturating_sub(1));
        request.from = Some(client.position_at(before).await?.map_or(0, |p| p + 1));
    }
    print_read(remote, request).await
}

#[derive(Args, Debug)]
pub struct ReadAllArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub page: PageArgs,
}

pub async fn read_all(remote: &Remote, a: ReadAllArgs) -> Outcome {
    if a.filter.stream.is_some() {
        return Err(usage("read a stream with `annal read STREAM`"));
    }
    let request = a.page.apply(ReadRequest::source(a.filter.source()?))?;
    print_read(remote, request).await
}

#[derive(Args, Debug)]
pub struct TailArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// `now` (only new events), `start` (all history first), or a position to start after.
    #[arg(long, default_value = "now")]
    pub from: String,
}

/// Follows the log like `tail -f` until interrupted or the server goes away.
pub async fn tail(remote: &Remote, a: TailArgs) -> Outcome {
    let from = annal_server::json::subscribe_from(&a.from).map_err(|_| {
        usage(format!(
            "--from '{}' is neither start, now nor a position",
            a.from
        ))
    })?;
    let source = a.filter.source()?;
    let client = remote.connect().await?;
    let mut sub = client
        .subscribe(SubscribeRequest::new(source, from))
        .await?;
    let stdout = std::io::stdout();
    // One listener for the whole run, so that no Ctrl-C falls between two of them.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    loop {
        let item = tokio::select! {
            biased;
            _ = interrupt.recv() => return Ok(ExitCode::SUCCESS),
            item = next_item(&mut sub) => item,
        };
        let Some(item) = item else {
            return Err(Failure::from(Error::Unavailable(
                "the server ended the subscription".into(),
            )));
        };
        let mut out = stdout.lock();
        let written = match item? {
            SubscriptionItem::Event(e) => writeln!(
                out,
                "{}",
                if remote.json {
                    render::event_json(&e)
                } else {
                    render::event_line(&e)
                }
            ),
            SubscriptionItem::CaughtUp { position } => {
                if !remote.json {
                    eprintln!(
                        "-- caught up at {}; waiting for new events (Ctrl-C to stop)",
                        position.map_or("the empty log".to_string(), |p| format!("position {p}"))
                    );
                }
                Ok(())
            }
            SubscriptionItem::Checkpoint { .. } => Ok(()),
        };
        match written.and_then(|()| out.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            Err(e) => return Err(e.into()),
        }
    }
}

#[derive(Args, Debug)]
pub struct StreamsArgs {
    /// Only streams whose id starts with this.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Start after this stream id.
    #[arg(long)]
    pub after: Option<String>,
    /// At most this many [default: all].
    #[arg(long, short = 'n')]
    pub limit: Option<usize>,
}

pub async fn streams(remote: &Remote, a: StreamsArgs) -> Outcome {
    let client = remote.connect().await?;
    let list = client
        .list_streams(ListStreams {
            prefix: a.prefix,
            after: a.after,
            limit: a.limit.unwrap_or(0),
        })
        .await?;
    let mut out = std::io::stdout().lock();
    if remote.json {
        for s in &list {
            writeln!(out, "{}", render::stream_info_json(s))?;
        }
    } else {
        let width = list
            .iter()
            .map(|s| s.stream_id.len())
            .max()
            .unwrap_or(6)
            .max(6);
        writeln!(
            out,
            "{:<width$}  {:>10}  {:>12}  last written",
            "stream", "events", "last pos"
        )?;
        for s in &list {
            writeln!(
                out,
                "{:<width$}  {:>10}  {:>12}  {}",
                s.stream_id, s.count, s.last_position, s.last_written_at
            )?;
        }
        writeln!(out, "{} stream(s)", list.len())?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// The stream; without one, the server's own information.
    pub stream: Option<String>,
}

pub async fn info(remote: &Remote, a: InfoArgs) -> Outcome {
    let client = remote.connect().await?;
    let mut out = std::io::stdout().lock();
    let Some(stream) = a.stream else {
        let i = client.server_info().await?;
        if remote.json {
            let v = serde_json::json!({
                "version": i.version, "head": i.head, "max_event_bytes": i.max_event_bytes,
                "max_append_bytes": i.max_append_bytes, "poisoned": i.poisoned,
            });
            writeln!(out, "{v}")?;
        } else {
            writeln!(
                out,
                "server          {} (annal {})",
                remote.server, i.version
            )?;
            writeln!(
                out,
                "head            {}",
                i.head.map_or("empty".to_string(), |h| h.to_string())
            )?;
            writeln!(out, "max event       {} bytes", i.max_event_bytes)?;
            writeln!(out, "max append      {} bytes", i.max_append_bytes)?;
            if let Some(p) = i.poisoned {
                writeln!(out, "REFUSES WRITES  {p}")?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
    match client.stream_info(&stream).await? {
        Some(s) if remote.json => writeln!(out, "{}", render::stream_info_json(&s))?,
        Some(s) => writeln!(out, "{}", render::stream_info(&s))?,
        None => {
            return Err(Failure::from(Error::NotFound(format!(
                "stream '{stream}' has no event"
            ))))
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    /// The stream.
    pub stream: String,
    /// The latest snapshot at or before this revision, instead of the latest.
    #[arg(long, value_name = "REVISION", conflicts_with = "delete")]
    pub at: Option<u64>,
    /// Delete every snapshot of the stream instead (loads then replay its events).
    #[arg(long)]
    pub delete: bool,
}

pub async fn snapshot(remote: &Remote, a: SnapshotArgs) -> Outcome {
    let client = remote.connect().await?;
    let mut out = std::io::stdout().lock();
    if a.delete {
        let deleted = client.delete_snapshots(&a.stream).await?;
        if remote.json {
            writeln!(out, "{}", serde_json::json!({ "deleted": deleted }))?;
        } else {
            writeln!(out, "deleted {deleted} snapshot(s) of {}", a.stream)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    match client.get_snapshot(&a.stream, a.at).await? {
        Some(s) if remote.json => writeln!(out, "{}", render::snapshot_json(&s))?,
        Some(s) => writeln!(out, "{}", render::snapshot(&s))?,
        None => {
            return Err(Failure::from(Error::NotFound(match a.at {
                Some(r) => format!(
                    "stream '{}' has no snapshot at or before revision {r}",
                    a.stream
                ),
                None => format!("stream '{}' has no snapshot", a.stream),
            })))
        }
    }
    Ok(ExitCode::SUCCESS)
}
