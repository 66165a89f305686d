//! The embedded engine passes the same conformance suite as every backend.

use std::sync::atomic::{AtomicUsize, Ordering};

use annal_core::testkit::conformance;
use annal_engine::{Config, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engine_passes_the_conformance_suite() {
    let root = tempfile::tempdir().unwrap();
    let n = AtomicUsize::new(0);
    conformance::run_all(|| {
        let dir = root
            .path()
            .join(n.fetch_add(1, Ordering::Relaxed).to_string());
        async move { Store::open(dir).unwrap() }
    })
    .await;
}

/// The same suite with tiny segments and checkpoints after a few events, so that every
/// check also runs across segment boundaries, index runs and merges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_passes_the_conformance_suite_across_segments_and_runs() {
    let root = tempfile::tempdir().unwrap();
    let n = AtomicUsize::new(0);
    conformance::run_all(|| {
        let dir = root
            .path()
            .join(n.fetch_add(1, Ordering::Relaxed).to_string());
        async move {
            let config = Config::default()
                .segment_size(4096)
                .checkpoint_entries(64)
                .max_append_size(64 * 1024 * 1024);
            Store::open_with(dir, config).unwrap()
        }
    })
    .await;
}
