//! Aggregates as deciders: pure functions from state and command to events, and from state
//! and event to the next state. Everything that touches the store lives in the handler.

use crate::{Event, Snapshotting};

/// An aggregate: the rules of one consistency boundary, kept in one stream per instance.
///
/// `decide` and `evolve` are pure: the same inputs give the same outputs, with no I/O, so a
/// decision can be retried after a conflict and state can be rebuilt from the log at will.
pub trait Decider: Send + Sync + 'static {
    /// The category of the aggregate's streams: instance `42` lives in `{CATEGORY}-42`.
    const CATEGORY: &'static str;
    /// The state decisions need; `Default` is the state before the first event.
    type State: Default + Send + Sync + 'static;
    type Command: Send + Sync;
    type Event: Event;
    /// Why a command is refused.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The events that carry out `command` given `state`; none when there is nothing to do.
    fn decide(
        state: &Self::State,
        command: &Self::Command,
    ) -> Result<Vec<Self::Event>, Self::Error>;

    /// The state after `event`.
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;

    /// Whether and when instances are snapshotted, and how their state is encoded; none by
    /// default. A load then starts from the latest usable snapshot.
    fn snapshots() -> Option<Snapshotting<Self::State>> {
        None
    }
}

/// The stream that holds instance `id` of `D`.
pub fn stream_id<D: Decider>(id: &str) -> String {
    format!("{}-{id}", D::CATEGORY)
}
