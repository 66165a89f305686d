//! Annal's embedded storage engine.
//!
//! [`Store`] opens a folder and implements [`annal_core::EventStore`]: an append-only log of
//! segment files with CRC-framed batch records (`log/`), one writer thread with group
//! commit (`write/`), indexes by stream, category, event type, tag, event id, batch and time
//! that are derived from the log (`index/`) and checkpointed (`checkpoint/`), recovery that
//! cuts a torn tail (`recovery.rs`), and reads and subscriptions (`read/`). `layout.rs` names
//! every file of a store folder; `threads.rs` starts and stops the engine's threads.

pub mod check;
mod checkpoint;
mod codec;
mod config;
mod heads;
mod index;
pub mod io;
mod layout;
mod log;
mod read;
mod recovery;
mod shared;
mod snapshots;
mod store;
mod threads;
mod write;

pub use config::Config;
pub use log::format;
pub use log::format::StoredEvent;
pub use store::{Memory, Store, StoredRead};
