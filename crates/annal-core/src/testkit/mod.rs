//! Tools for testing backends: [`MemoryStore`], a plain in-memory [`EventStore`](crate::EventStore)
//! that serves as the reference model, and [`conformance`], the suite every backend must pass.
//!
//! A backend runs the whole suite from one of its tests:
//!
//! ```no_run
//! # use annal_core::testkit::MemoryStore;
//! # async fn open_empty_store() -> MemoryStore { MemoryStore::new() }
//! // In a test: #[tokio::test(flavor = "multi_thread")]
//! async fn conformance() {
//!     annal_core::testkit::conformance::run_all(|| async { open_empty_store().await }).await;
//! }
//! ```
//!
//! The suite needs a tokio runtime with time enabled (`#[tokio::test]` enables it).

pub mod conformance;
mod memory;

pub use memory::MemoryStore;
