//! Who asked and why: the metadata every event of a command carries.

use std::collections::BTreeMap;

use annal_core::{Metadata, RecordedEvent, Uuid};

/// The context of a command: its business transaction (correlation id), what caused it
/// (causation id), who asked (actor) and free key/values. Every event the command writes
/// carries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// Groups every event of one business transaction, across streams and services.
    pub correlation_id: Uuid,
    /// The command's id, or the event it reacts to.
    pub causation_id: Uuid,
    pub actor: Option<String>,
    pub extra: BTreeMap<String, String>,
}

impl Context {
    /// A command that starts a business transaction: a fresh id is both its correlation and
    /// its causation.
    pub fn new() -> Self {
        Self::command(Uuid::new_v4())
    }

    /// A command with this id that starts a business transaction.
    pub fn command(command_id: Uuid) -> Self {
        Context {
            correlation_id: command_id,
            causation_id: command_id,
            actor: None,
            extra: BTreeMap::new(),
        }
    }

    /// A command issued in reaction to `event`: it joins the event's business transaction
    /// (the event's correlation id, or its own id when it has none), names the event as its
    /// cause, and keeps its actor and key/values unless they are set again.
    pub fn caused_by(event: &RecordedEvent) -> Self {
        Context {
            correlation_id: event.metadata.correlation_id.unwrap_or(event.id),
            causation_id: event.id,
            actor: event.metadata.actor.as_deref().map(str::to_string),
            extra: event.metadata.extra.clone(),
        }
    }

    /// Who asked.
    pub fn with_actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// A free key/value carried by every event.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// The metadata of the events written in this context.
    pub fn metadata(&self) -> Metadata {
        Metadata {
            correlation_id: Some(self.correlation_id),
            causation_id: Some(self.causation_id),
            actor: self.actor.as_deref().map(Into::into),
            extra: self.extra.clone(),
        }
    }
}

impl Default for Context {
    fn default() -> Self {
        Self::new()
    }
}
