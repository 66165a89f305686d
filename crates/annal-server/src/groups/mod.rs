//! Consumer groups: many members share a source's events, each key (a stream, or a
//! correlation id) held by one member at a time and handled in log order, with retries,
//! parking and a dead-letter list.
//!
//! | file | what |
//! |---|---|
//! | `def.rs` | a group's definition and settings, and their checks |
//! | `machine.rs` | the dispatch as a pure state machine: keys, leases, acks, parking |

pub mod def;
pub mod journal;
pub mod machine;

#[cfg(test)]
mod model;
