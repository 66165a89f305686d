//! Annal's CQRS toolkit: what a team writes its domain with, against any
//! [`EventStore`](annal_core::EventStore), so that the same code runs on the embedded engine
//! and on a client of `annal serve`.
//!
//! - [`Event`]: an aggregate's events as a serde enum; the variant is the event type.
//! - [`Decider`]: an aggregate as two pure functions, `decide` and `evolve`.
//! - [`CommandHandler`]: load, decide, append on the revision read, retry on conflict.
//! - [`Context`]: the correlation id, causation id and actor every event carries.

mod context;
mod decider;
mod error;
mod event;
mod handler;
mod load;
mod retry;

pub use context::Context;
pub use decider::{stream_id, Decider};
pub use error::{CodecError, CommandError, LoadError};
pub use event::{decode, encode, Encoded, Event};
pub use handler::{to_new, CommandHandler, Handled};
pub use load::{decode_recorded, load, Loaded};
pub use retry::Retry;
