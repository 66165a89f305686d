//! Annal's embedded storage engine.
//!
//! [`Store`] opens a folder and implements [`annal_core::EventStore`]: an append-only log of
//! segment files with CRC-framed batch records, one writer thread with group commit, indexes
//! by stream, category, event type, tag, event id, batch and time that are derived from the
//! log and checkpointed, recovery that cuts a torn tail, and subscriptions that read the log
//! and wait at its head.

pub mod check;
mod checkpoint;
pub mod format;
mod heads;
mod idfilter;
mod index;
pub mod io;
mod log;
mod memtable;
mod prealloc;
mod read;
mod recovery;
mod store;
mod writer;

pub use format::StoredEvent;
pub use store::{Config, Store, StoredRead};
