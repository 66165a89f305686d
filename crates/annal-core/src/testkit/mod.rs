//! Tools for testing backends: [`MemoryStore`], a plain in-memory [`EventStore`](crate::EventStore)
//! that serves as the reference model, and [`conformance`], the suite every backend must pass.
//!
//! A backend runs the whole suite from a test file, one test per check:
//!
//! ```ignore
//! use annal_core::testkit::MemoryStore;
//!
//! async fn new_store() -> (MemoryStore, ()) {
//!     (MemoryStore::new(), ())
//! }
//!
//! annal_core::conformance_tests!(
//!     #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//!     new_store
//! );
//! ```
//!
//! The suite needs a tokio runtime with time enabled (`#[tokio::test]` enables it).

pub mod conformance;
mod memory;

pub use memory::MemoryStore;
