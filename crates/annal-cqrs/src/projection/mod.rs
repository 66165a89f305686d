//! Projections: read models in SQL, kept up to date from the log.
//!
//! A [`Projection`] declares its tables and turns each event (after upcasting) into
//! [`Changes`] of them. A [`Runner`] follows a subscription (history, then live) and applies
//! events in batches; each batch and the projection's checkpoint commit in one transaction
//! of the [`Sink`], so a crash never applies an event twice or skips one.
//!
//! - A projection whose version changed is rebuilt when its runner starts: it replays the
//!   log into a shadow copy of its tables while the live tables keep answering queries, then
//!   swaps the copy in, in one transaction ([`Runner::rebuild`] does it on demand).
//! - [`Runner::reconcile`] replays into a third copy up to the live checkpoint, compares row by row
//!   and can repair the live rows.
//! - [`Running::wait_for`] and [`Sink::wait_for`] give read-your-writes: wait until the
//!   read model holds a position an append returned.

mod model;
mod reconcile;
mod runner;
mod sink;
mod sql;

pub use model::{Changes, Column, ColumnType, Index, Table, Value, MAX_NAME};
pub use reconcile::Reconciled;
pub use runner::{OnFailure, Phase, Runner, Running, Settings, Status};
pub use sink::{Checkpoint, Difference, DifferenceKind, Failure, Sink, SinkError};

use annal_core::{RecordedEvent, Source};

use crate::Event;

/// A read model: its tables and how events change them.
///
/// `apply` should depend on the event alone (and on the rows it changes, through SQL), so
/// that a replay builds the same rows: rebuilds and reconciliation rely on it.
pub trait Projection: Send + Sync + 'static {
    /// The events it reads, decoded (and upcast) before `apply` sees them.
    type Event: Event;

    /// Its name in the sink: a lower-case identifier, unique per sink.
    fn name(&self) -> &str;

    /// Raise it when `apply` or the tables change: the runner then rebuilds the read model.
    fn version(&self) -> u32 {
        1
    }

    /// Which events of the log it reads.
    fn source(&self) -> Source;

    fn tables(&self) -> Vec<Table>;

    /// The changes `event` makes (`recorded` is the stored event it came from: its stream,
    /// position, time and metadata). An error fails the event; the runner's
    /// [`OnFailure`] says what happens next.
    fn apply(
        &self,
        event: &Self::Event,
        recorded: &RecordedEvent,
        changes: &mut Changes<'_>,
    ) -> Result<(), String>;
}

/// Why a projection stopped, or did not start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProjectionError {
    /// The projection's definition is wrong (a table, a name).
    #[error("projection '{projection}': {problem}")]
    Invalid { projection: String, problem: String },
    /// The sink holds a read model built by a newer version of the projection.
    #[error(
        "projection '{projection}' is at version {stored} in the sink, newer than this \
         code's version {ours}: run the newer code, or drop the read model to go back"
    )]
    VersionAhead {
        projection: String,
        stored: u32,
        ours: u32,
    },
    #[error("projection '{projection}': the event store failed: {error}")]
    Store {
        projection: String,
        error: annal_core::Error,
    },
    #[error("projection '{projection}': the read-model sink failed: {error}")]
    Sink {
        projection: String,
        error: SinkError,
    },
    /// An event could not be applied and the runner stopped on it (it is recorded in the
    /// sink's failures; the checkpoint stays before it).
    #[error(
        "projection '{projection}' stopped at position {position} ({stream_id}@{revision}, \
         {event_type}) after {attempts} attempt(s): {error}"
    )]
    Failed {
        projection: String,
        position: u64,
        stream_id: String,
        revision: u64,
        event_type: String,
        attempts: u32,
        error: String,
    },
}

/// Why a read-your-writes wait ended without the position.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WaitError {
    #[error(
        "projection '{projection}' did not reach position {position} within {waited:?} \
         (it is at {})",
        reached.map_or("no position yet".to_string(), |r| r.to_string())
    )]
    Timeout {
        projection: String,
        position: u64,
        reached: Option<u64>,
        waited: std::time::Duration,
    },
    /// The runner stopped before the position.
    #[error("projection '{projection}' stopped before position {position}: {reason}")]
    Stopped {
        projection: String,
        position: u64,
        reason: String,
    },
    #[error(transparent)]
    Sink(#[from] SinkError),
}
