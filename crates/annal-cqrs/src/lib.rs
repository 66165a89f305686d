//! Annal's CQRS toolkit: what a team writes its domain with, against any
//! [`EventStore`](annal_core::EventStore), so that the same code runs on the embedded engine
//! and on a client of `annal serve`.
//!
//! - [`Event`]: an aggregate's events as a serde enum; the variant is the event type.
//! - [`Decider`]: an aggregate as two pure functions, `decide` and `evolve`.
//! - [`CommandHandler`]: load, decide, append on the revision read, retry on conflict; with
//!   a state cache, the next command on an aggregate decides on the state the last one left.
//! - [`Decision`]: a rule whose boundary is a tag query, not a stream (Dynamic Consistency
//!   Boundaries); its events belong to no stream and are guarded by a condition.
//! - [`Context`]: the correlation id, causation id and actor every event carries.
//! - [`Upcasters`]: older event versions brought up to date as they are read.
//! - [`Snapshotting`]: when the store keeps an aggregate's snapshot, and how its state is
//!   encoded; loads start from the latest usable one.
//! - [`load_as_of`]: time travel, an aggregate as of a revision, a position or an instant.
//! - [`projection`]: read models in SQLite or PostgreSQL, kept up to date from the log,
//!   rebuilt blue/green, reconciled against a replay.
//! - [`render_history`]: an aggregate's history, or any read's, as lines for people.

mod cache;
mod context;
mod decider;
mod decision;
mod error;
mod event;
mod handler;
mod history;
mod load;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod projection;
mod retry;
mod snapshot;
mod upcast;

pub use context::Context;
pub use decider::{stream_id, Decider};
pub use decision::Decision;
pub use error::{CodecError, CommandError, LoadError};
pub use event::{decode, encode, Encoded, Event};
pub use handler::{to_new, CommandHandler, Handled};
pub use history::{render_history, render_line};
pub use load::{decode_each, decode_recorded, load, load_as_of, At, Loaded};
pub use retry::Retry;
pub use snapshot::Snapshotting;
pub use upcast::{Upcast, Upcasters};

/// A walk through a bank account built with this crate; every code block in it is a test.
#[doc = include_str!("../../../docs/guide.md")]
pub mod guide {}
