//! The consumer group commands: `groups` lists them; `group` creates, shows, changes and
//! deletes one, and lists, replays and discards its parked events.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use annal_client::{GroupArgs, GroupCall};
use annal_server::groups::json::{
    GroupJson, GroupSettingsJson, GroupStatusJson, GroupsJson, KeyByJson, OnParkJson,
    ParkedCountJson, ParkedPageJson, StartJson,
};
use annal_server::json::{QueryItemJson, QueryJson, SelectionJson, SourceJson, StreamId, TypeList};
use clap::{Args, Subcommand};

use crate::client::{Failure, Remote};

type Outcome = Result<ExitCode, Failure>;

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: 2,
        error: anyhow::anyhow!(message.into()),
    }
}

/// A group's settings as flags; each one not given keeps its default (create) or its value
/// (change).
#[derive(Args, Debug, Clone, Default)]
pub struct SettingsArgs {
    /// Route events by `stream` (default) or `correlation` id.
    #[arg(long, value_name = "KEY")]
    pub key_by: Option<String>,
    /// Events one member holds unacknowledged at most (default 100).
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<u32>,
    /// Failed deliveries of an event before it is parked (default 5).
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// The wait before the first retry, doubling after (default 1s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub retry_backoff: Option<Duration>,
    /// The longest wait before a retry (default 1m).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub max_backoff: Option<Duration>,
    /// A delivery not acknowledged in this time fails (default 30s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub ack_timeout: Option<Duration>,
    /// A member not heard from in this time is gone (default 15s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub member_timeout: Option<Duration>,
    /// What a parked event does to its key's later events: `block` (default) or `skip`.
    #[arg(long, value_name = "MODE")]
    pub on_park: Option<String>,
    /// Events parked at once at most (default 10000).
    #[arg(long, value_name = "N")]
    pub max_parked: Option<u32>,
    /// Events read ahead of the oldest unsettled one at most (default 10000).
    #[arg(long, value_name = "N")]
    pub buffer: Option<u32>,
    /// Members at once at most (default 64).
    #[arg(long, value_name = "N")]
    pub max_members: Option<u32>,
}

fn ms(d: Option<Duration>) -> Option<u64> {
    d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl SettingsArgs {
    fn json(&self) -> Result<GroupSettingsJson, Failure> {
        Ok(GroupSettingsJson {
            key_by: match self.key_by.as_deref() {
                None => None,
                Some("stream") => Some(KeyByJson::Stream),
                Some("correlation") => Some(KeyByJson::Correlation),
                Some(o) => {
                    return Err(usage(format!(
                        "--key-by '{o}' is neither stream nor correlation"
                    )))
                }
            },
            on_park: match self.on_park.as_deref() {
                None => None,
                Some("block") => Some(OnParkJson::Block),
                Some("skip") => Some(OnParkJson::Skip),
                Some(o) => return Err(usage(format!("--on-park '{o}' is neither block nor skip"))),
            },
            max_in_flight: self.max_in_flight,
            max_attempts: self.max_attempts,
            retry_backoff_ms: ms(self.retry_backoff),
            max_backoff_ms: ms(self.max_backoff),
            ack_timeout_ms: ms(self.ack_timeout),
            member_timeout_ms: ms(self.member_timeout),
            max_parked: self.max_parked,
            buffer: self.buffer,
            max_members: self.max_members,
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum GroupCmd {
    /// Create a group; without a source flag it draws from the whole log.
    Create {
        name: String,
        /// Only streams of this category.
        #[arg(long)]
        category: Option<String>,
        /// Only streams whose id starts with this.
        #[arg(long, value_name = "PREFIX")]
        stream_prefix: Option<String>,
        /// Only events of these types (comma-separated).
        #[arg(long, value_delimiter = ',')]
        types: Vec<String>,
        /// Only events with all of these tags (comma-separated).
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        /// Where it starts: `beginning` (default), `end`, or a position.
        #[arg(long, default_value = "beginning")]
        start: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// A group's definition and state: floor, lag, in flight, parked, members.
    Show { name: String },
    /// Change a group's settings; its members join again.
    Change {
        name: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Delete a group and its state.
    Delete { name: String },
    /// A group's parked events, in log order.
    Parked {
        name: String,
        /// Only those after this position.
        #[arg(long)]
        after: Option<u64>,
        /// At most this many (default 100).
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// Deliver a group's parked events again: the one at --position, or every one.
    ReplayParked {
        name: String,
        #[arg(long)]
        position: Option<u64>,
    },
    /// Drop a group's parked events: the one at --position, or every one.
    DiscardParked {
        name: String,
        #[arg(long)]
        position: Option<u64>,
    },
}

fn source(
    category: Option<String>,
    stream_prefix: Option<String>,
    types: Vec<String>,
    tags: Vec<String>,
) -> SourceJson {
    let query = (!types.is_empty() || !tags.is_empty()).then(|| QueryJson {
        items: vec![QueryItemJson { types, tags }],
    });
    match (category, stream_prefix, query) {
        (None, None, None) => SourceJson::All,
        (Some(c), None, None) => SourceJson::Category(StreamId(c)),
        (None, None, Some(q)) if q.items[0].tags.is_empty() => {
            SourceJson::EventTypes(TypeList(q.items[0].types.clone()))
        }
        (None, None, Some(q)) => SourceJson::Query(q),
        (category, stream_prefix, query) => SourceJson::Select(SelectionJson {
            category: category.map(StreamId),
            stream_prefix: stream_prefix.map(StreamId),
            query,
        }),
    }
}

fn parse<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, Failure> {
    serde_json::from_str(json).map_err(|e| Failure {
        code: 1,
        error: anyhow::anyhow!("the server's answer does not read: {e}"),
    })
}

/// `annal groups`: every group, a line each.
pub async fn list(remote: &Remote) -> Outcome {
    let client = remote.connect().await?;
    let json = client
        .group_call(GroupCall::List, GroupArgs::default())
        .await?;
    let mut out = std::io::stdout().lock();
    let groups: GroupsJson = parse(&json)?;
    if remote.json {
        for g in &groups.groups {
            writeln!(out, "{}", serde_json::to_string(g).unwrap_or_default())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if groups.groups.is_empty() {
        writeln!(out, "no consumer groups")?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<24} {:>10} {:>10} {:>9} {:>7} {:>7}",
        "GROUP", "FLOOR", "LAG", "IN FLIGHT", "PARKED", "MEMBERS"
    )?;
    for g in &groups.groups {
        writeln!(
            out,
            "{:<24} {:>10} {:>10} {:>9} {:>7} {:>7}{}",
            g.definition.name,
            g.floor,
            g.lag_events,
            g.in_flight,
            g.parked,
            g.members.len(),
            g.failed
                .as_ref()
                .map_or(String::new(), |f| format!("  stopped: {f}"))
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn show(out: &mut impl Write, g: &GroupStatusJson) -> std::io::Result<()> {
    let d = &g.definition;
    let s = &d.settings;
    let source = serde_json::to_string(&d.source).unwrap_or_default();
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    writeln!(out, "group        {}", d.name)?;
    writeln!(out, "source       {source}")?;
    writeln!(
        out,
        "floor        {}   head {}   lag {} events, {:.1} s",
        g.floor,
        opt(g.head),
        g.lag_events,
        g.lag_seconds
    )?;
    writeln!(
        out,
        "pending      {}   in flight {}   parked {}",
        g.pending, g.in_flight, g.parked
    )?;
    writeln!(
        out,
        "counted      {} delivered ({} again), {} acknowledged, {} parked, {} rebalances",
        g.delivered, g.redelivered, g.acknowledged, g.parked_total, g.rebalances
    )?;
    writeln!(
        out,
        "settings     {}",
        serde_json::to_string(s).unwrap_or_default()
    )?;
    writeln!(out, "members      {}", g.members.len())?;
    for m in &g.members {
        writeln!(
            out,
            "  {:>6}  {:<32} {} in flight",
            m.id, m.name, m.in_flight
        )?;
    }
    if let Some(f) = &g.failed {
        writeln!(out, "stopped      {f}")?;
    }
    Ok(())
}

/// `annal group ...`.
pub async fn group(remote: &Remote, cmd: GroupCmd) -> Outcome {
    let client = remote.connect().await?;
    let mut out = std::io::stdout().lock();
    let (call, args) = match cmd {
        GroupCmd::Create {
            name,
            category,
            stream_prefix,
            types,
            tags,
            start,
            settings,
        } => {
            let start = match start.as_str() {
                "beginning" => StartJson::Beginning,
                "end" => StartJson::End,
                p => StartJson::Position(p.parse().map_err(|_| {
                    usage(format!(
                        "--start '{p}' is none of: beginning, end, a position"
                    ))
                })?),
            };
            let def = GroupJson {
                name,
                source: source(category, stream_prefix, types, tags),
                start,
                settings: settings.json()?,
            };
            let json = serde_json::to_string(&def).unwrap_or_default();
            (
                GroupCall::Create,
                GroupArgs {
                    json,
                    ..GroupArgs::default()
                },
            )
        }
        GroupCmd::Show { name } => (
            GroupCall::Get,
            GroupArgs {
                name,
                ..GroupArgs::default()
            },
        ),
        GroupCmd::Change { name, settings } => {
            let json = serde_json::to_string(&settings.json()?).unwrap_or_default();
            (
                GroupCall::Change,
                GroupArgs {
                    name,
                    json,
                    ..GroupArgs::default()
                },
            )
        }
        GroupCmd::Delete { name } => (
            GroupCall::Delete,
            GroupArgs {
                name,
                ..GroupArgs::default()
            },
        ),
        GroupCmd::Parked { name, after, limit } => (
            GroupCall::Parked,
            GroupArgs {
                name,
                after,
                limit,
                ..GroupArgs::default()
            },
        ),
        GroupCmd::ReplayParked { name, position } => (
            GroupCall::Replay,
            GroupArgs {
                name,
                position,
                ..GroupArgs::default()
            },
        ),
        GroupCmd::DiscardParked { name, position } => (
            GroupCall::Discard,
            GroupArgs {
                name,
                position,
                ..GroupArgs::default()
            },
        ),
    };
    let name = args.name.clone();
    let json = client.group_call(call, args).await?;
    if remote.json {
        if !json.is_empty() {
            writeln!(out, "{json}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    match call {
        GroupCall::Create | GroupCall::Get | GroupCall::Change => {
            show(&mut out, &parse::<GroupStatusJson>(&json)?)?
        }
        GroupCall::Delete => writeln!(out, "deleted consumer group {name}")?,
        GroupCall::Parked => {
            let page: ParkedPageJson = parse(&json)?;
            if page.parked.is_empty() {
                writeln!(out, "no parked events")?;
            }
            for p in &page.parked {
                let state = match (p.replaying, p.waiting) {
                    (true, _) => "replaying",
                    (false, true) => "waiting",
                    (false, false) => "parked",
                };
                writeln!(
                    out,
                    "{:>10}  {:<9} {:<24} {} attempt(s)  {}  {}{}",
                    p.position,
                    state,
                    p.key,
                    p.attempts,
                    p.parked_at,
                    p.reason,
                    if p.member.is_empty() {
                        String::new()
                    } else {
                        format!(" (member {})", p.member)
                    }
                )?;
            }
        }
        GroupCall::Replay | GroupCall::Discard => {
            let n: ParkedCountJson = parse(&json)?;
            let verb = if call == GroupCall::Replay {
                "delivering again"
            } else {
                "discarded"
            };
            writeln!(out, "{verb} {} parked event(s) of {name}", n.count)?;
        }
        GroupCall::List => {}
    }
    Ok(ExitCode::SUCCESS)
}
