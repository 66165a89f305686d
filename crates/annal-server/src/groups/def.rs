//! What a consumer group is: its name, the events it draws, where it starts, and the
//! settings that bound what its members may hold.

use std::time::Duration;

use annal_core::{validate, Error, Source};

/// Longest group name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// What routes an event to its key: at most one member holds a key at a time, and a key's
/// events are delivered in log order, each after the one before it is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyBy {
    /// The event's stream (an event of no stream is a key of its own).
    #[default]
    Stream,
    /// The event's correlation id (its stream, when it carries none).
    Correlation,
}

/// What a parked event does to the later events of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnPark {
    /// They wait behind it, parked as waiting, until it is replayed and acknowledged or
    /// discarded: order is never broken silently.
    #[default]
    Block,
    /// They go on without it.
    Skip,
}

/// Where a new group starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// The first event of the log.
    #[default]
    Beginning,
    /// The events appended after the group is created.
    End,
    /// This log position and after.
    Position(u64),
}

/// A group's settings, each with a default and a bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSettings {
    pub key_by: KeyBy,
    /// The most events one member holds unacknowledged (one per key).
    pub max_in_flight: u32,
    /// Failed deliveries of one event before it is parked.
    pub max_attempts: u32,
    /// The wait before the first retry; each later one waits twice the one before.
    pub retry_backoff: Duration,
    /// The longest wait before a retry.
    pub max_backoff: Duration,
    /// A delivery not acknowledged in this time fails, and its event is retried.
    pub ack_timeout: Duration,
    /// A member not heard from in this time is gone: its deliveries are retried elsewhere.
    pub member_timeout: Duration,
    pub on_park: OnPark,
    /// The most events parked at once; at the limit the group reads no further.
    pub max_parked: u32,
    /// The most events read ahead of the oldest unsettled one.
    pub buffer: u32,
    /// The most members at once.
    pub max_members: u32,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            key_by: KeyBy::Stream,
            max_in_flight: 100,
            max_attempts: 5,
            retry_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            ack_timeout: Duration::from_secs(30),
            member_timeout: Duration::from_secs(15),
            on_park: OnPark::Block,
            max_parked: 10_000,
            buffer: 10_000,
            max_members: 64,
        }
    }
}

/// The largest value each count setting takes.
pub const MAX_IN_FLIGHT: u32 = 10_000;
pub const MAX_ATTEMPTS: u32 = 1_000;
pub const MAX_PARKED: u32 = 1_000_000;
pub const MAX_BUFFER: u32 = 1_000_000;
pub const MAX_MEMBERS: u32 = 1_024;
/// The longest any of the timing settings may be.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

impl GroupSettings {
    /// Every problem of the settings, or none.
    pub fn validate(&self) -> Result<(), Error> {
        let counts = [
            ("max_in_flight", self.max_in_flight, MAX_IN_FLIGHT),
            ("max_attempts", self.max_attempts, MAX_ATTEMPTS),
            ("max_parked", self.max_parked, MAX_PARKED),
            ("buffer", self.buffer, MAX_BUFFER),
            ("max_members", self.max_members, MAX_MEMBERS),
        ];
        for (field, value, max) in counts {
            if value == 0 || value > max {
                return Err(Error::invalid(
                    field,
                    format!("is {value}; it must be from 1 to {max}"),
                ));
            }
        }
        let times = [
            ("retry_backoff", self.retry_backoff, Duration::ZERO),
            ("max_backoff", self.max_backoff, Duration::ZERO),
            ("ack_timeout", self.ack_timeout, Duration::from_millis(10)),
            (
                "member_timeout",
                self.member_timeout,
                Duration::from_millis(10),
            ),
        ];
        for (field, value, min) in times {
            if value < min || value > MAX_DURATION {
                return Err(Error::invalid(
                    field,
                    format!(
                        "is {}; it must be from {} to {}",
                        humantime::format_duration(value),
                        humantime::format_duration(min),
                        humantime::format_duration(MAX_DURATION)
                    ),
                ));
            }
        }
        if self.retry_backoff > self.max_backoff {
            return Err(Error::invalid(
                "retry_backoff",
                format!(
                    "is {}, longer than max_backoff ({})",
                    humantime::format_duration(self.retry_backoff),
                    humantime::format_duration(self.max_backoff)
                ),
            ));
        }
        Ok(())
    }

    /// The wait before retrying an event that failed `attempts` times (at least once).
    pub fn backoff(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(32);
        self.retry_backoff
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.max_backoff)
    }
}

/// A consumer group as it is defined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDef {
    pub name: String,
    /// The whole log, a category, event types, a tag query or a selection of these.
    pub source: Source,
    pub start: Start,
    pub settings: GroupSettings,
}

/// A group name: 1 to 128 bytes of ASCII letters, digits, `-`, `_` and `.`.
pub fn name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(Error::invalid(
            "group name",
            format!("is {} bytes; it must be 1 to {MAX_NAME_LEN}", name.len()),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(*c)))
    {
        return Err(Error::invalid(
            "group name",
            format!(
                "'{}' holds {c:?}; a name is ASCII letters, digits, '-', '_' and '.'",
                name.escape_debug()
            ),
        ));
    }
    Ok(())
}

impl GroupDef {
    /// Every check a definition must pass before it is kept.
    pub fn validate(&self) -> Result<(), Error> {
        name(&self.name)?;
        match &self.source {
            Source::All
            | Source::Category(_)
            | Source::EventTypes(_)
            | Source::Query(_)
            | Source::Select(_) => validate::source(&self.source)?,
            other => {
                return Err(Error::invalid(
                    "group source",
                    format!(
                        "{} cannot feed a group; a group draws from the whole log, a category, \
                         event types, a tag query or a selection of these",
                        source_kind(other)
                    ),
                ))
            }
        }
        self.settings.validate()
    }
}

fn source_kind(s: &Source) -> &'static str {
    match s {
        Source::All => "the whole log",
        Source::Stream(_) => "a single stream",
        Source::Category(_) => "a category",
        Source::EventTypes(_) => "event types",
        Source::Query(_) => "a query",
        Source::Correlation(_) => "a correlation id",
        Source::Actor(_) => "an actor",
        Source::Select(_) => "a selection",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> GroupDef {
        GroupDef {
            name: "videos".into(),
            source: Source::Category("video".into()),
            start: Start::Beginning,
            settings: GroupSettings::default(),
        }
    }

    #[test]
    fn the_defaults_pass_and_each_bad_value_is_named() {
        def().validate().unwrap();
        let mut d = def();
        d.settings.max_in_flight = 0;
        assert!(d
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_in_flight"));
        let mut d = def();
        d.settings.retry_backoff = Duration::from_secs(120);
        let e = d.validate().unwrap_err().to_string();
        assert!(
            e.contains("retry_backoff") && e.contains("max_backoff"),
            "{e}"
        );
        let mut d = def();
        d.settings.ack_timeout = Duration::from_millis(1);
        assert!(d
            .validate()
            .unwrap_err()
            .to_string()
            .contains("ack_timeout"));
        let mut d = def();
        d.name = "a b".into();
        assert!(d.validate().unwrap_err().to_string().contains("group name"));
        let mut d = def();
        d.source = Source::Stream("video-1".into());
        assert!(d
            .validate()
            .unwrap_err()
            .to_string()
            .contains("a single stream"));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let s = GroupSettings::default();
        assert_eq!(s.backoff(1), Duration::from_secs(1));
        assert_eq!(s.backoff(2), Duration::from_secs(2));
        assert_eq!(s.backoff(4), Duration::from_secs(8));
        assert_eq!(s.backoff(7), Duration::from_secs(60));
        assert_eq!(s.backoff(1_000), Duration::from_secs(60));
    }
}
