//! The JSON shapes of consumer groups, for the HTTP API, the CLI and the journal (which
//! keeps a definition as [`GroupJson`]).

use std::time::Duration;

use annal_core::{Error, Query, Source};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::def::{GroupDef, GroupSettings, KeyBy, OnPark, Start};
use super::runtime::{Parked, Status};
use crate::json::{Name, QueryItemJson, QueryJson, SelectionJson, SourceJson, StreamId, TypeList};

/// What routes an event to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyByJson {
    Stream,
    Correlation,
}

/// What a parked event does to the later events of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnParkJson {
    Block,
    Skip,
}

/// Where a new group starts: `"beginning"`, `"end"`, or `{"position": n}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StartJson {
    #[default]
    Beginning,
    End,
    Position(u64),
}

/// A group's settings; each one not given keeps its default (on create) or its value (on
/// a change).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupSettingsJson {
    /// `stream` (default) or `correlation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_by: Option<KeyByJson>,
    /// The most events one member holds unacknowledged (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 10000)]
    pub max_in_flight: Option<u32>,
    /// Failed deliveries of one event before it is parked (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_attempts: Option<u32>,
    /// Milliseconds before the first retry, doubling after (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 86400000)]
    pub retry_backoff_ms: Option<u64>,
    /// The longest wait before a retry, in milliseconds (default 60000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 86400000)]
    pub max_backoff_ms: Option<u64>,
    /// A delivery not acknowledged in this many milliseconds fails (default 30000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 10, maximum = 86400000)]
    pub ack_timeout_ms: Option<u64>,
    /// A member not heard from in this many milliseconds is gone (default 15000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 10, maximum = 86400000)]
    pub member_timeout_ms: Option<u64>,
    /// `block` (default) or `skip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_park: Option<OnParkJson>,
    /// The most events parked at once (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000000)]
    pub max_parked: Option<u32>,
    /// The most events read ahead of the oldest unsettled one (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000000)]
    pub buffer: Option<u32>,
    /// The most members at once (default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1024)]
    pub max_members: Option<u32>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<&GroupSettings> for GroupSettingsJson {
    fn from(s: &GroupSettings) -> Self {
        GroupSettingsJson {
            key_by: Some(match s.key_by {
                KeyBy::Stream => KeyByJson::Stream,
                KeyBy::Correlation => KeyByJson::Correlation,
            }),
            max_in_flight: Some(s.max_in_flight),
            max_attempts: Some(s.max_attempts),
            retry_backoff_ms: Some(ms(s.retry_backoff)),
            max_backoff_ms: Some(ms(s.max_backoff)),
            ack_timeout_ms: Some(ms(s.ack_timeout)),
            member_timeout_ms: Some(ms(s.member_timeout)),
            on_park: Some(match s.on_park {
                OnPark::Block => OnParkJson::Block,
                OnPark::Skip => OnParkJson::Skip,
            }),
            max_parked: Some(s.max_parked),
            buffer: Some(s.buffer),
            max_members: Some(s.max_members),
        }
    }
}

impl GroupSettingsJson {
    /// `base` with every setting given here put in its place.
    pub fn apply(&self, base: &GroupSettings) -> GroupSettings {
        let mut s = base.clone();
        let d = |v: Option<u64>, old: Duration| v.map_or(old, Duration::from_millis);
        if let Some(k) = self.key_by {
            s.key_by = match k {
                KeyByJson::Stream => KeyBy::Stream,
                KeyByJson::Correlation => KeyBy::Correlation,
            };
        }
        if let Some(p) = self.on_park {
            s.on_park = match p {
                OnParkJson::Block => OnPark::Block,
                OnParkJson::Skip => OnPark::Skip,
            };
        }
        s.max_in_flight = self.max_in_flight.unwrap_or(s.max_in_flight);
        s.max_attempts = self.max_attempts.unwrap_or(s.max_attempts);
        s.retry_backoff = d(self.retry_backoff_ms, s.retry_backoff);
        s.max_backoff = d(self.max_backoff_ms, s.max_backoff);
        s.ack_timeout = d(self.ack_timeout_ms, s.ack_timeout);
        s.member_timeout = d(self.member_timeout_ms, s.member_timeout);
        s.max_parked = self.max_parked.unwrap_or(s.max_parked);
        s.buffer = self.buffer.unwrap_or(s.buffer);
        s.max_members = self.max_members.unwrap_or(s.max_members);
        s
    }
}

/// A consumer group's definition (`POST /v1/groups`).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupJson {
    /// 1 to 128 ASCII letters, digits, '-', '_' and '.'.
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._-]+$")]
    pub name: String,
    /// `"all"`, or one of `category`, `event_types`, `query`, `select`.
    pub source: SourceJson,
    #[serde(default)]
    pub start: StartJson,
    #[serde(default)]
    pub settings: GroupSettingsJson,
}

fn query_json(q: &Query) -> QueryJson {
    QueryJson {
        items: q
            .items
            .iter()
            .map(|i| QueryItemJson {
                types: i.types.clone(),
                tags: i.tags.clone(),
            })
            .collect(),
    }
}

/// A source in its JSON shape.
pub fn source_json(s: &Source) -> SourceJson {
    match s {
        Source::All => SourceJson::All,
        Source::Stream(id) => SourceJson::Stream(StreamId(id.clone())),
        Source::Category(c) => SourceJson::Category(StreamId(c.clone())),
        Source::EventTypes(t) => SourceJson::EventTypes(TypeList(t.clone())),
        Source::Query(q) => SourceJson::Query(query_json(q)),
        Source::Correlation(c) => SourceJson::Correlation(crate::json::UuidText(*c)),
        Source::Actor(a) => SourceJson::Actor(Name(a.clone())),
        Source::Select(s) => SourceJson::Select(SelectionJson {
            category: s.category.clone().map(StreamId),
            stream_prefix: s.stream_prefix.clone().map(StreamId),
            query: s.query.as_ref().map(query_json),
        }),
    }
}

impl From<&GroupDef> for GroupJson {
    fn from(d: &GroupDef) -> Self {
        GroupJson {
            name: d.name.clone(),
            source: source_json(&d.source),
            start: match d.start {
                Start::Beginning => StartJson::Beginning,
                Start::End => StartJson::End,
                Start::Position(p) => StartJson::Position(p),
            },
            settings: GroupSettingsJson::from(&d.settings),
        }
    }
}

impl GroupJson {
    /// The definition, its settings over `defaults`, checked.
    pub fn into_def(self, defaults: &GroupSettings) -> Result<GroupDef, Error> {
        let def = GroupDef {
            name: self.name,
            source: Source::from(self.source),
            start: match self.start {
                StartJson::Beginning => Start::Beginning,
                StartJson::End => Start::End,
                StartJson::Position(p) => Start::Position(p),
            },
            settings: self.settings.apply(defaults),
        };
        def.validate()?;
        Ok(def)
    }
}

/// A member of a group.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MemberJson {
    pub id: u64,
    pub name: String,
    /// Events it holds unacknowledged.
    pub in_flight: usize,
}

/// A group and its state (`GET /v1/groups/{name}`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupStatusJson {
    pub definition: GroupJson,
    /// Every position below it is settled: acknowledged or parked.
    pub floor: u64,
    /// The log's last position.
    pub head: Option<u64>,
    /// Positions from the floor to the head.
    pub lag_events: u64,
    /// How long ago the oldest unsettled event was recorded.
    pub lag_seconds: f64,
    /// Events read and not settled: queued, in flight, or waiting to be retried.
    pub pending: usize,
    pub in_flight: usize,
    pub parked: usize,
    pub members: Vec<MemberJson>,
    /// Deliveries since the server started, and how many of them were retries.
    pub delivered: u64,
    pub redelivered: u64,
    pub acknowledged: u64,
    /// Events parked since the server started.
    pub parked_total: u64,
    /// Members joining, leaving or lost since the server started.
    pub rebalances: u64,
    /// Why the group stopped, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

impl From<&Status> for GroupStatusJson {
    fn from(s: &Status) -> Self {
        GroupStatusJson {
            definition: GroupJson::from(&s.def),
            floor: s.gauges.floor,
            head: s.head,
            lag_events: s.lag_events,
            lag_seconds: s.lag_seconds,
            pending: s.gauges.pending,
            in_flight: s.gauges.in_flight,
            parked: s.gauges.parked,
            members: s
                .members
                .iter()
                .map(|m| MemberJson {
                    id: m.id,
                    name: m.name.clone(),
                    in_flight: m.in_flight,
                })
                .collect(),
            delivered: s.counters.delivered,
            redelivered: s.counters.redelivered,
            acknowledged: s.counters.acked,
            parked_total: s.counters.parked,
            rebalances: s.counters.rebalances,
            failed: s.failed.clone(),
        }
    }
}

/// Every group (`GET /v1/groups`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupsJson {
    pub groups: Vec<GroupStatusJson>,
}

/// A parked event: a pointer into the log, with why it was set aside.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ParkedJson {
    pub position: u64,
    /// Its key: a stream id, or a correlation id.
    pub key: String,
    pub reason: String,
    pub attempts: u32,
    /// The member whose delivery failed last (empty for a waiting event).
    pub member: String,
    /// RFC 3339.
    pub parked_at: String,
    /// It did not fail: it waits behind an earlier parked event of its key.
    pub waiting: bool,
    /// It is being delivered again.
    pub replaying: bool,
}

impl From<&Parked> for ParkedJson {
    fn from(p: &Parked) -> Self {
        let d = &p.letter;
        ParkedJson {
            position: d.position,
            key: d.key.to_string(),
            reason: d.reason.clone(),
            attempts: d.attempts,
            member: d.member.clone(),
            parked_at: d.parked_at.to_string(),
            waiting: d.waiting,
            replaying: p.replaying,
        }
    }
}

/// A page of a group's parked events (`GET /v1/groups/{name}/parked`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ParkedPageJson {
    pub parked: Vec<ParkedJson>,
}

/// Which parked events to replay or discard: one position, or all when absent.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ParkedChoiceJson {
    #[serde(default)]
    pub position: Option<u64>,
}

/// How many parked events a replay or discard took.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ParkedCountJson {
    pub count: usize,
}
