//! The in-memory reference store passes the conformance suite.

use annal_core::testkit::{conformance, MemoryStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_passes_the_conformance_suite() {
    conformance::run_all(|| async { MemoryStore::new() }).await;
}

#[tokio::test(flavor = "current_thread")]
async fn memory_store_passes_the_conformance_suite_on_one_thread() {
    conformance::run_all(|| async { MemoryStore::new() }).await;
}
