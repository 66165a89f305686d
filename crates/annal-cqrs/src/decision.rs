//! Decisions across streams with Dynamic Consistency Boundaries: a decision names the events
//! its state is built from by a tag query ("every claim of this username"), and its events
//! are appended only if nothing matching that query was written after the position it read.
//! The events belong to no stream; they are found again by their tags.

use annal_core::Query;

use crate::Event;

/// A rule whose consistency boundary is a query over tags and types rather than one stream.
///
/// Like [`Decider`](crate::Decider), `decide` and `evolve` are pure. The handler reads the
/// events `query` selects, folds them, decides, and appends the decided events (with no
/// stream, carrying their tags) on the condition that no event matching the query came
/// after what it read; on a conflict it reads and decides again.
pub trait Decision: Send + Sync + 'static {
    /// What the rule knows after folding the events of its query.
    type State: Default + Send + Sync;
    type Command: Send + Sync;
    type Event: Event;
    /// Why a command is refused.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The events the decision about `command` depends on. Every event it selects must be
    /// an `Event` of this decision (name the types in the query's items).
    fn query(command: &Self::Command) -> Query;

    /// The events that carry out `command` given `state`; none when there is nothing to do.
    fn decide(
        state: &Self::State,
        command: &Self::Command,
    ) -> Result<Vec<Self::Event>, Self::Error>;

    /// The state after `event`.
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;
}
