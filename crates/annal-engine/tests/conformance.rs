//! The embedded engine passes the same conformance suite as every backend, one test per
//! check: with the default configuration, and with tiny segments and checkpoints after a
//! few events, so that every check also runs across segment boundaries, index runs and
//! merges (and the snapshot file is compacted as soon as a record goes dead).

use annal_engine::{Config, Store};

async fn new_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (Store::open(dir.path()).unwrap(), dir)
}

annal_core::conformance_tests!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    new_store
);

mod across_segments_and_runs {
    use super::*;

    async fn new_store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::default()
            .segment_size(4096)
            .checkpoint_entries(64)
            .max_append_size(64 * 1024 * 1024)
            .snapshot_compact_after(64);
        (Store::open_with(dir.path(), config).unwrap(), dir)
    }

    annal_core::conformance_tests!(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        new_store
    );
}
